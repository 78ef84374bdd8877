"""LBRY claims: a protobuf codec, the claim schema (current and legacy), and claim values."""
from appliance.lbry.claims.value import ClaimError, ClaimValue, decode_hex, decode_value, encode_value

__all__ = ["ClaimError", "ClaimValue", "decode_hex", "decode_value", "encode_value"]
