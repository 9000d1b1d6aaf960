"""The ``serve`` runtime: the scheduler of crawls and the web application."""
