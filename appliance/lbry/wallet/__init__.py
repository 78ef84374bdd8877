"""LBRY wallet servers: the JSON-RPC client, raw transactions, claim scripts and resolve results."""
from appliance.lbry.wallet.client import (
    ClaimLookupError,
    ServerError,
    TransportError,
    WalletClient,
    WalletError,
    WalletTimeout,
)

__all__ = ["ClaimLookupError", "ServerError", "TransportError", "WalletClient", "WalletError", "WalletTimeout"]
