"""Schemathesis hooks for tests/openapi.rs (SCHEMATHESIS_HOOKS=schemathesis_hooks)."""

import schemathesis

# OCSP requests are DER bytes: send what is generated for a binary body as it is.
schemathesis.serializer.alias("application/ocsp-request", "application/octet-stream")
