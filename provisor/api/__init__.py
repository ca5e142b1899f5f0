"""The service: a REST API at /api/v1 and an inbound SCIM 2.0 server at /scim/v2 (FastAPI).

Does: authenticate every request (a bearer token, or a sign-in that makes one), check the
route's permission against the operator's roles and the token's scopes, bind the operator as
the acting person of everything the engine audits, call the same engine functions the command
line calls, and answer errors as JSON problem details (RFC 9457) — never a stack trace.
Does not: hold rules or queries of its own: ``provisor.engine`` does the work,
``provisor.domain.roles`` says who may do what.
"""
