"""Django-free deployment engines: backends (local processes, Docker, Kubernetes), canary analysis, autoscaling."""
