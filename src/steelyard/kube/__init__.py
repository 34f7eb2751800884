"""The Kubernetes provider. Only `steelyard.kube.client` imports lightkube."""
