"""The REST API's routes, one module per area; each route declares its permission."""
