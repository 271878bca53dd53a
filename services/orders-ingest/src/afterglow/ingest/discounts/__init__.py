"""Reward codes in the tenants' shops.

Loyalty and referrals issue reward codes; only orders-ingest holds the shops' API
credentials (``platform_connections``). So they ask by event and are answered by event:

* ``discount.requested`` (``handlers``) stores a ``shop_discounts`` row, ``creating``;
* the worker (``worker``) creates the code in the shop (``platforms``: Shopify Admin
  GraphQL ``discountCodeBasicCreate``, WooCommerce ``POST /wp-json/wc/v3/coupons``,
  BigCommerce ``POST /v2/coupons``), with a timeout, through the outbound guard, per
  shop within its rate limit, retried with backoff; then, in one transaction, the row
  becomes ``active``, ``discount.created`` is emitted and the announcement the issuer
  attached (its ``message.requested``) is released: the customer hears of the code only
  once it exists. Failure for good emits ``discount.failed`` and sends nothing;
* the code is the key: a retry after a timeout (the shop may have created it before
  the answer was lost) first looks the code up and adopts what it finds;
* an ``order.placed`` whose ``discount_codes`` holds a reward code marks it ``used``
  (``discount.used``); ``discount.revoke_requested`` (a clawback) and the code's end
  (``ends_at``) disable it in the shop (``discount.revoked``);
* ``GET /v1/platform-actions`` shows each code's state, attempts and last error.
"""
