"""The operator: kopf handlers and the composition root. Thin; no protocol logic lives here."""
