//! `kvgateway`: a stateless coordinator in front of the storage nodes.
//!
//! It needs the coordinator (quorum fan-out, read repair) that the replication issue builds;
//! until then it refuses to start rather than pretend to serve. Talk to a `kvnode` directly.

fn main() {
    eprintln!(
        "kvgateway: not available yet: the gateway needs the replication coordinator, which is \
         not built. Send requests to a kvnode (make run starts one on 127.0.0.1:7000)."
    );
    std::process::exit(1);
}
