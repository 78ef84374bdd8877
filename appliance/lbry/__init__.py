"""The LBRY-network side: claims (protobuf codec), the wallet server client and transactions, lbrycrd, and
the LBRY blocklist source. Nothing here is needed to store or serve blobs."""
