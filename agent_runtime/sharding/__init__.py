"""Sharding GitLabAgents over operator replicas: the pure parts (no Kubernetes API, no kopf).

`assign`: which live member owns an agent (rendezvous hashing). `members`: which members are live, from
the Leases they renew, judged by this process's own clock. `handover`: what one replica does about one
agent given the owner, the agent's claim and whether its worker runs here. The operator wires them to
the Kubernetes API in agent_operator/sharding/.
"""
