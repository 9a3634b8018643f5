"""The web application: routers, error handling, and the console pages."""
