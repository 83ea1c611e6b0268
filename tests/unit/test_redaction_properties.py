"""Properties of log redaction (renkei.logredact): no generated name, phone number or long code
survives ``redact()`` in any of the shapes a log line gives it, and Renkei's own log lines —
drawn from the real message templates — come out unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import traceback
import unicodedata
from datetime import date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from renkei.logredact import redact

SETTINGS = settings(max_examples=200, deadline=None)

# -- personal values ------------------------------------------------------------------------------

FAMILY = list("佐藤鈴木高橋田中伊渡辺山本中村小林加吉松井上木清水森池川阿部石前野岡村藤原斎遠青坂西福太田三王林金李張陳髙𠮷")
GIVEN = list("太郎一郎花子明美恵優翔大輝陽菜結愛真由紀和彦健二三四誠直樹裕介拓海翼葵蓮凛咲奈々")
SEPARATORS = ["", " ", "\u3000", "・"]
MORAE = ["ア", "イ", "ウ", "エ", "オ", "カ", "キ", "ク", "ケ", "コ", "ガ", "ギ", "グ", "ゲ", "ゴ", "サ", "シ",
         "ス", "セ", "ソ", "ザ", "ジ", "ズ", "タ", "チ", "ツ", "テ", "ト", "ダ", "デ", "ド", "ナ", "ニ", "ヌ",
         "ネ", "ノ", "ハ", "ヒ", "フ", "ヘ", "ホ", "バ", "ビ", "ブ", "ベ", "ボ", "パ", "ピ", "プ", "ポ", "マ",
         "ミ", "ム", "メ", "モ", "ヤ", "ユ", "ヨ", "ラ", "リ", "ル", "レ", "ロ", "ワ", "ン", "キョ", "シュ",
         "チャ", "リョ", "ジュ", "ー", "ッ"]


def _halfwidth(kata: str) -> str:
    out = []
    for ch in kata:
        for cp in range(0xFF65, 0xFFA0):  # a half-width form, with its voicing mark, NFKC-equal to ch
            for tail in ("", "ﾞ", "ﾟ"):
                if unicodedata.normalize("NFKC", chr(cp) + tail) == ch:
                    out.append(chr(cp) + tail)
                    break
            else:
                continue
            break
        else:
            out.append(ch)
    return "".join(out)


def _hiragana(kata: str) -> str:
    return "".join(chr(ord(ch) - 0x60) if "ァ" <= ch <= "ヶ" else ch for ch in kata)


@st.composite
def kanji_names(draw) -> str:
    family = "".join(draw(st.lists(st.sampled_from(FAMILY), min_size=1, max_size=2)))
    given_ = "".join(draw(st.lists(st.sampled_from(GIVEN), min_size=1, max_size=2)))
    if draw(st.booleans()) and len(family) == 2:
        return family  # a family name alone: 山田
    return family + draw(st.sampled_from(SEPARATORS)) + given_


@st.composite
def kana_names(draw) -> str:
    def word() -> str:  # two to four morae, the first one that can start a word
        first = draw(st.sampled_from([m for m in MORAE if m not in ("ー", "ッ", "ン")]))
        return first + "".join(draw(st.lists(st.sampled_from(MORAE), min_size=1, max_size=3)))

    family, given_ = word(), word()
    if len(family) >= 3 and draw(st.booleans()):
        reading = family  # a family reading alone: ヤマダ
    else:
        reading = family + draw(st.sampled_from(SEPARATORS)) + given_
    script = draw(st.sampled_from(["katakana", "hiragana", "halfwidth"]))
    if script == "hiragana":
        return _hiragana(reading)
    return _halfwidth(reading).replace("・", "･") if script == "halfwidth" else reading


FULLWIDTH = str.maketrans("0123456789-+()", "０１２３４５６７８９－＋（）")
DASHES = ["-", "-", "‐", "−", "–", "ー", "－", "ｰ"]


def _digits(draw, n: int) -> str:
    return "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=n, max_size=n)))


@st.composite
def phone_numbers(draw) -> str:
    kind = draw(st.sampled_from(["mobile", "landline", "free", "0800"]))
    if kind == "mobile":
        groups = ["0" + draw(st.sampled_from(["70", "80", "90"])), _digits(draw, 4), _digits(draw, 4)]
    elif kind == "free":
        groups = ["0120", _digits(draw, 3), _digits(draw, 3)]
    elif kind == "0800":
        groups = ["0800", _digits(draw, 3), _digits(draw, 4)]
    else:  # 10 digits: area code of 1–4 digits after the 0, then the local number
        area = draw(st.integers(1, 4))
        groups = ["0" + str(draw(st.integers(1, 9))) + _digits(draw, area - 1), _digits(draw, 5 - area), _digits(draw, 4)]
    dash = draw(st.sampled_from(DASHES))
    style = draw(st.sampled_from(["dash", "dash", "space", "paren", "midparen", "intl", "spaced_dash"]))
    if style == "dash":
        text = dash.join(groups)
    elif style == "spaced_dash":
        text = f" {dash} ".join(groups)
    elif style == "space":
        text = " ".join(groups)
    elif style == "paren":
        text = f"({groups[0]}){groups[1]}{dash}{groups[2]}"
    elif style == "midparen":
        text = f"{groups[0]}({groups[1]}){groups[2]}"
    else:
        trunk = draw(st.sampled_from(["", "(0)"]))
        text = "+81" + draw(st.sampled_from(["-", " "])) + trunk + groups[0][1:] + "-" + groups[1] + "-" + groups[2]
    return text.translate(FULLWIDTH) if draw(st.booleans()) and draw(st.booleans()) else text


@st.composite
def long_codes(draw) -> str:
    n = draw(st.integers(10, 13))
    code = str(draw(st.integers(1, 9))) + _digits(draw, n - 1) if draw(st.booleans()) else _digits(draw, n)
    shape = draw(st.sampled_from(["bare", "bare", "hyphens", "mynumber"]))
    if shape == "hyphens":
        cut = sorted(draw(st.sets(st.integers(2, n - 2), min_size=1, max_size=2)))
        parts = [code[i:j] for i, j in zip([0, *cut], [*cut, n])]
        code = "-".join(p for p in parts if p)
    elif shape == "mynumber":
        code = f"{_digits(draw, 4)} {_digits(draw, 4)} {_digits(draw, 4)}"
    return code.translate(FULLWIDTH) if draw(st.booleans()) and draw(st.booleans()) else code


def _traceback(message: str) -> str:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return "".join(traceback.format_exception(exc))


# Where a value lands in a log line. Numbers in the surrounding text stay below four digits.
EMBEDDINGS = [
    lambda v: f"insert failed for {v}",
    lambda v: f"row 3: {v!r} not in registry",
    lambda v: f"{v}",
    lambda v: f"resident={v}; retrying",
    lambda v: f"duplicate key value violates unique constraint \"uq\"\nDETAIL:  Key (resident_code)=({v}) already exists.",
    lambda v: _traceback(f"bad row {v}"),
    lambda v: _traceback(repr({"name": v, "row": 3})),
    lambda v: repr({"name": v, "tel": v, "n": 1}),
    lambda v: repr([v, 3, None]),
    lambda v: json.dumps({"event": "row", "value": v}),  # ensure_ascii: \\uXXXX escapes
    lambda v: json.dumps({"event": "row", "value": v}, ensure_ascii=False),
    lambda v: json.dumps([v, v], separators=(",", ":")),
    lambda v: f"message {repr(json.dumps({'data': v}, ensure_ascii=False).encode('utf-8'))} dropped",  # bytes repr
    lambda v: f"氏名：{v}様 (連絡先)",
    lambda v: f"contact <{v}>, TEL:{v}\tend",
]

JP = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]")
LONG_DIGITS = re.compile(r"\d{4,}")


@SETTINGS
@given(name=st.one_of(kanji_names(), kana_names()), embed=st.sampled_from(EMBEDDINGS))
def test_no_generated_name_survives(name, embed):
    line = embed(name)
    out = redact(line)
    assert name not in out
    assert not JP.search(out), (line, out)  # every kana/kanji of the line was in a masked run


@SETTINGS
@given(value=st.one_of(phone_numbers(), long_codes()), embed=st.sampled_from(EMBEDDINGS))
def test_no_phone_number_or_long_code_survives(value, embed):
    line = embed(value)
    out = redact(line)
    assert value not in out
    assert not LONG_DIGITS.search(unicodedata.normalize("NFKC", out)), (line, out)


# -- Renkei's own log lines -----------------------------------------------------------------------

SOURCES = ["registry", "registry_contact", "immunization", "child_health", "nhi", "subscriptions", "events"]
SERVICES = ["immunization", "checkup", "event", "nhi_checkup"]
DAGS = [f"ingest_{s}" for s in SOURCES] + ["link_residents", "proactive_services"]
REASONS = ["vaccine_code", "birth_date", "expect_column_values_to_be_in_set:vaccine_code", "dangling_erk"]
TOKYO = timezone(timedelta(hours=9))

counts = st.integers(0, 999_999_999)  # a bare count of ten digits would be masked (documented)
small = st.integers(0, 99_999)
seconds = st.floats(0, 100_000, allow_nan=False)
source = st.sampled_from(SOURCES)
moments = st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31), timezones=st.just(TOKYO))
days = st.dates(date(2020, 1, 1), date(2035, 12, 31))
hex_ids = st.binary(min_size=8, max_size=32).map(lambda b: hashlib.sha256(b).hexdigest())
item_ids = hex_ids.map(lambda h: h[:16])
run_ids = st.builds(lambda kind, at: f"{kind}__{at.isoformat()}", st.sampled_from(["manual", "scheduled", "asset_triggered"]),
                    moments)
stream_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(1_600_000_000_000, 2_100_000_000_000), st.integers(0, 99))
erks = st.binary(min_size=16, max_size=48).map(
    lambda b: "v1." + base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii"))
watermarks = st.one_of(counts, moments.map(datetime.isoformat))
users = st.sampled_from(["reviewer", "ops.tanaka", "admin"])
channels = st.sampled_from(["email", "sms", "letter", "line"])


def _dict(keys: list[str]):
    return st.fixed_dictionaries({k: small for k in keys})


TEMPLATES = [
    st.builds(lambda s, c: "reconcile %s: %s" % (s, c), source, st.fixed_dictionaries({
        "source": source, "mode": st.sampled_from(["full", "incremental"]), "read": counts, "upserts": counts,
        "deletes": counts, "unchanged": counts, "seconds": seconds.map(lambda x: round(x, 2)), "announced": st.booleans()})),
    st.builds(lambda s, e: "reconcile %s: change event not sent: %s" % (s, e), source,
              st.sampled_from(["ConnectionError('redis down')", "TimeoutError()"])),
    st.builds(lambda r, n: "%s on %s failed for the whole batch (raised: %s)" % (r, "vaccine_code", n),
              st.sampled_from(REASONS), st.sampled_from(["KeyError('x')", "ValueError('bad regex')"])),
    st.builds(lambda s, f, n: "%s: %d of %d rows failed validation" % (s, f, n), source, counts, counts),
    st.builds(lambda seq: "link_residents: the mart is empty but staging is not (the warehouse restarted since "
              "build %d?): building in full" % seq, counts),
    st.builds(lambda c, flags: "link_residents: %s" % ({**c, "flags": flags, "mode": "incremental"},),
              st.fixed_dictionaries({"residents": counts, "linked": counts, "unregistered_erks": counts,
                                     "audit": counts, "residents_touched": counts, "build_seq": counts}),
              st.dictionaries(st.sampled_from(REASONS), counts, max_size=3)),
    st.builds(lambda i, st_, u: "renkei ui: review item %s %s by %s" % (i, st_, u), item_ids,
              st.sampled_from(["confirmed", "rejected"]), users),
    st.builds(lambda n, r, ch, why: "notice %s (%s): %s send failed with %s; retried after backoff" % (n, r, ch, why),
              hex_ids, st.sampled_from(SERVICES), channels, st.sampled_from(["timeout", "HTTP 503", "smtp 421"])),
    st.builds(lambda at, c: "deliver_notices at %s: %s" % (at.isoformat(), c), moments,
              st.fixed_dictionaries({"dry_run": st.booleans(), "considered": counts, "sent": counts, "failed": counts,
                                     "by_service": st.dictionaries(st.sampled_from(SERVICES), _dict(["sent", "failed"]))})),
    st.builds(lambda n, s: "notice %s: a concurrent run already recorded it; this %s receipt is dropped" % (n, s),
              hex_ids, st.sampled_from(["sent", "failed"])),
    st.builds(lambda s, r, wm, d, f, t: "extract %s: %d changes after change_seq %s (%d tombstones), %d failing its suite "
              "(%.1fs in the suite)" % (s, r, wm, d, f, t), source, counts, watermarks, counts, counts, seconds),
    st.builds(lambda s, f, n, k, reasons, rerun: "validate %s: %d of %d rows fail, %d of them already quarantined (%s)%s"
              % (s, f, n, k, reasons, "; the suite ran again (changed since the extract)" if rerun else ""),
              source, counts, counts, counts, st.dictionaries(st.sampled_from(REASONS), counts, max_size=3), st.booleans()),
    st.builds(lambda s, l, d, q, o, t, wm: "load %s: %d loaded (%d staged rows retired by tombstones), %d quarantined "
              "(%d pseudonyms converted in %.1fs), watermark change_seq %s" % (s, l, d, q, o, t, wm),
              source, counts, counts, counts, counts, seconds, watermarks),
    st.builds(lambda k, e, b: "change stream %s: Redis unreachable (%s); retrying in %.0f s — nothing is lost, "
              "unacked entries are re-read" % (k, e, b), source.map(lambda s: f"renkei:changes:{s}"),
              st.sampled_from(["ConnectionError", "TimeoutError"]), seconds),
    st.builds(lambda k, g: "change stream %s: group %s vanished; re-creating it" % (k, g),
              source.map(lambda s: f"renkei-dev-ab12:changes:{s}"), st.just("renkei-trigger")),
    st.builds(lambda k, m: "change stream %s: entry %s is gone (trimmed); acknowledging it" % (k, m),
              source.map(lambda s: f"renkei:changes:{s}"), st.one_of(stream_ids, stream_ids.map(lambda m: m.encode()))),
    st.builds(lambda s, e, b: "change_log for %s: warehouse unreachable (%s); retrying in %.0f s" % (s, e, b),
              source, st.sampled_from(["OperationalError", "InterfaceError"]), seconds),
    st.builds(lambda s, m, e: "change channel %s: message %s dropped: %s" % (s, m, e), source, stream_ids,
              st.sampled_from(["change event: field 'event_id' must be 32 lowercase hex digits (uuid4().hex)",
                               "change event: not JSON"])),
    st.builds(lambda s, m, o: "change channel %s: message %s names source %r: dropped; publish it to its own source"
              % (s, m, o), source, stream_ids, source),
    st.builds(lambda s, r, e, t: f"extract  {s:<14} {r:>8,} rows pseudonymized ({e} with unparseable values) in {t:.1f}s",
              source, counts, counts, seconds),
    st.builds(lambda t, p: f"airflow  metadata DB ready ({t:.1f}s); log: {p}", seconds,
              days.map(lambda d: f"/work/runs/{d.isoformat()}/airflow.log")),
    st.builds(lambda d, s, t: f"dag run  {d:<22} {s:<8} {t:>6.1f}s", st.sampled_from(DAGS),
              st.sampled_from(["success", "failed"]), seconds),
    st.builds(lambda d, r, s, t: "airflow  %s" % ({"event": "end", "dag_id": d, "run_id": r, "state": s, "seconds": t},),
              st.sampled_from(DAGS), run_ids, st.sampled_from(["success", "failed"]), seconds.map(lambda x: round(x, 2))),
    st.builds(lambda s, c: "relay to %s: %s" % (s, c), st.just("renkei:notices"),
              st.fixed_dictionaries({"stream": st.just("renkei:notices"), "published": counts, "pending": counts,
                                     "state_events_published": counts, "errors": st.integers(0, 1)})),
    st.builds(lambda s, e: "notices stream %s: %s; acknowledged and skipped" % (s, e), st.just("renkei:notices"),
              st.sampled_from(["notice message: bad JSON", "KeyError('notice_id')"])),
    st.builds(lambda d, i, n, c: "proactive_services on %s, part %d of %d: %s" % (d, i, n, c), days, small, small,
              st.fixed_dictionaries({"part": small, "open": counts, "new": counts, "held_erks": counts,
                                     "by_service_kind": st.dictionaries(st.sampled_from(SERVICES), counts)})),
    st.builds(lambda d, c: "proactive_services on %s: %s" % (d, c), days, _dict(["open", "new", "closed", "held_erks"])),
    st.builds(lambda r, s: f"city: {r:,} residents generated in {s:.1f}s", counts, seconds),
    st.builds(lambda s, n, t: f"first export of {s}: {n:,} rows in {t:.1f}s", source, counts, seconds),
    st.builds(lambda c, t: f"city copied from {c} in {t:.1f}s", st.just("/work/.cache/city-100000-seed7"), seconds),
    st.builds(lambda t: f"airflow db migrate: {t:.1f}s", seconds),
    st.builds(lambda v, to, rid: "link rotation v%s→v%s started (%s)" % (v, to, rid), small, small,
              st.builds(lambda a, b: f"link-v{a}-v{b}", small, small)),
    st.builds(lambda a, b, name, done, total: f"link rotation v{a}→v{b}: {name} {done:,}/{total:,}", small, small,
              st.sampled_from(["linkage", "subjects", "notices"]), counts, counts),
    st.builds(lambda rid, rows, seq: "link rotation %s completed: %s rows re-sealed; audit entry %s" % (rid, rows, seq),
              st.just("link-v1-v2"), counts, counts),
    st.builds(lambda rid, r, n, rate, seq: f"link rotation {rid}: completed, {r:,} rows re-sealed ({n:,} in this run, "
              f"{rate:,.0f} rows/s); audit entry {seq}", st.just("link-v1-v2"), counts, counts, seconds, counts),
    st.builds(lambda s, n, d, e: f"{s}: {n:,} rows, {d} defects, {e} era dates", source, counts, small, small),
    st.builds(lambda n: f"manifest: {n:,} entries → /work/city/manifest.json", counts),
    # Identifiers a record may carry around a message.
    st.builds(lambda erk, d, u: f"erk {erk} for dept:{d} (event {u})", erks, source,
              st.uuids().map(lambda u: str(u) if u.int % 2 else u.hex)),
    st.builds(lambda at, r: f"{at.isoformat(sep=' ', timespec='milliseconds')} run {r}", moments, run_ids),
]


@SETTINGS
@given(line=st.one_of(*TEMPLATES))
def test_renkei_log_lines_come_out_unchanged(line):
    assert redact(line) == line
