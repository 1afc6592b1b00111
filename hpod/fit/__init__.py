"""Model fits off the event loop: the fitter, its worker process, CPU manners, the torch model."""
