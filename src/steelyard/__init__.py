"""Steelyard: a Kubernetes-native HTTP/1.1 and TCP load balancer."""

__version__ = "0.1.0"
