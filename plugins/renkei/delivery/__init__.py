"""Delivery (the registry's boundary): notices in the outbox → messages to residents, with receipts.

    deliver(settings, now, …) → DeliveryReport     renkei.delivery.deliver
    DeliverySettings.from_env() / .from_work(dir)  renkei.delivery.settings
    load_delivery_config()                         renkei.delivery.config (config/delivery.yaml)

Modules: contacts (ERK → verified contacts, in memory), optouts, payload (what a message may
say), templates (Jinja2, config/templates/), jdates, channels (Channel protocol, SMTP),
pacing (quiet hours, backoff, rate), receipts (the delivery DB).
"""
