"""What both nodes share: node base, job kinds, storage, config, certificates, data loading, gRPC plumbing."""
