"""Real test substrate: local kube-apiserver + etcd, redis-server, and the helpers they share."""
