"""HTTP ingress: cron trigger routes and queue-first webhooks on Falcon, served by waitress."""
