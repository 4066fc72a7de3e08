"""fedreg on Flower: the ``flower`` execution backend (:mod:`fedreg_flower.backend`) and the ClientApp that
trains fedreg clients on Flower SuperNodes (:mod:`fedreg_flower.client`). Installed with fedreg; Flower itself
comes with the ``flower`` extra (``pip install -e ".[flower]"``). docs/flower.md says what runs where and
what each message carries."""
