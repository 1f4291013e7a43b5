"""The agentk engine, kopf-free: transports, modules, worker manager, informer cache, telemetry."""
