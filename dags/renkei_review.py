"""apply_review_decisions: apply the decisions reviewers requested on the Renkei review page.

The Airflow api-server that serves the Renkei pages holds no keyring, so a reviewer's approve or
reject there is only recorded as a request (``review_requests``). This Dag runs where the
keyring is (every minute): each pending request becomes the decision and its ``review_decision``
audit-trail entry in one transaction, the trail's head is anchored after
(renkei.linkage.review.apply_requests). A request that no longer fits is marked refused with the
reason. The task fails (and the requests stay pending) while the audit entry cannot be written,
e.g. a keyring without the chain key. The next link_residents run honours applied decisions.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from renkei.schedules import cron


@dag(
    schedule=cron("* * * * *"),
    catchup=False,
    max_active_runs=1,
    tags=["renkei", "review"],
    doc_md=__doc__,
)
def apply_review_decisions():
    @task
    def apply_requests() -> dict:
        from renkei.linkage.review import REQUEST_APPLIED, REQUEST_REFUSED, apply_requests as run_apply
        from renkei.settings import Settings

        done = run_apply(Settings.from_env().warehouse_url)
        return {"applied": len(done[REQUEST_APPLIED]), "refused": len(done[REQUEST_REFUSED])}

    apply_requests()


apply_review_decisions()
