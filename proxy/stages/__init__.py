"""The request path's stages: small objects built once per config, called directly per request.

`path.RequestPath` runs them for every listener (docs/architecture.md draws the order): `edge.Edge`,
then the route table and `route.RouteStage`, `retry.RetryLoop`, `cluster.ClusterStage` and
`attempt.EndpointAttempt`. Per-request state is one `context.RequestContext`, which is also the record
handed to the sinks when the request ends. `proxy/outbound.py` assembles them from a config.
"""
