"""Who is calling: authentication (TLS, mTLS, OIDC bearer tokens) and authorization.

Authentication runs as a gRPC server interceptor and leaves the caller's ``Principal`` in a
context variable for the RPC's task; authorization reads it. Handlers never parse
credentials themselves.
"""
