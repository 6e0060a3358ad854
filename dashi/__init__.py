"""The dashi wire protocol on kombu, in Python 3.

:mod:`dashi.protocol` (message bodies, headers, error payloads),
:mod:`dashi.codec` (JSON bodies, with :mod:`dashi.fastjson` and :mod:`dashi.jsontree`),
:mod:`dashi.client` (calls and fires), :mod:`dashi.service` (serving operations),
:mod:`dashi.messenger` (one-way messages), :mod:`dashi.security` (message signing),
:mod:`dashi.broker` (connection parameters and naming), :mod:`dashi.transport`
(the broker-less ``embedded://`` kombu transport) and :mod:`dashi.errors`.

This package imports nothing of the rest of the project: it takes plain values
(see :class:`dashi.broker.BrokerConfig`).
"""
