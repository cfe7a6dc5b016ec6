"""Scale-out over NATS JetStream: collectors sharing instruments through leases, publishing candles
that serving nodes and the cold-store writer consume (see docs/cluster.md)."""
