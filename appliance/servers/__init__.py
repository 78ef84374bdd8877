"""The gevent blob servers: reflector receiver (:5566), TCP peer (:5567), HTTP (:5569).

Each serves an already bound and listening socket handed in by its caller (the supervisor, or a
standalone command); see `base.GeventServer` for the start/stop contract.
"""
