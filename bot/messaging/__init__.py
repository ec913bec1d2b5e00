"""The pipeline: stored callbacks → handlers (inbox), side effects → WeCom (outbox), one unit of
work around each handler, atomic claims under a lease, group commit for the web's writes, and the
worker threads with their doorbell. Domain modules plug in through their HANDLERS and EXECUTORS."""
