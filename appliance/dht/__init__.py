"""LBRY's DHT (Kademlia over UDP), compatible with current LBRY SDK nodes and with lbry.go's.

Modules, bottom up: bencode (strict codec), messages (datagrams, RPC arguments and results),
tokens, addresses (which addresses we accept), routing (k-buckets), peerstore (who announced what),
handler (our answers), protocol (UDP socket and outstanding RPCs), iterative (lookups), node (all of
it as one node), announcer, bootstrap (reflector.go's bootstrap node) and service (DhtService, what
the appliance's DHT process and `prism dht` run).
"""
