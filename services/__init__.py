"""The five TPA services. Each `services.<name>.app.build()` is that service's composition root."""
