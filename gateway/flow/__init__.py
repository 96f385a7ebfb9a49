"""The request flow: resolve -> authorise -> prepare -> call -> finish (see gateway/flow/gateway.py).

call.py         Call: one request and what its log row will say
plan.py         resolve: what a request names, from the catalog's memory (versions, lineage, variables)
access.py       which versions a key may be served (approved ones, unless its role or a grant says more)
gateway.py      Gateway: the chat and embeddings paths, accounting, and the one log row per request
sse.py          the SSE writer of a chat stream
model_cards.py  /v1/models cards
"""
