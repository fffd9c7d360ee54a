"""Checks of the deployment artefacts: the Dockerfile and the Kubernetes manifests in deploy/kubernetes/."""
