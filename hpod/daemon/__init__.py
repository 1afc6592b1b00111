"""The shell: an app that opens, serves and shuts down, and the services and seams it is made of."""
