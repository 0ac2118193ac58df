"""The bank-side joint scoring gateway that the card-application flow calls at submission.

A bank-side service: it never imports `partner_node`; it reaches the partner only over gRPC.

- `gateway.config`: the decision configuration (thresholds, hard rules, limit matrix, rights
  packages, instalment rule table), loaded from YAML; examples in ``gateway/examples/``.
- `gateway.application`: typed application fields to the bank's feature row, encoded by the
  model version's own preprocessor.
- `gateway.policy`: the configuration applied to a model's outputs.
- `gateway.scoring`: the scoring core (`Scorer`) and the partner channel's view of a result.
- `gateway.audit_log` and its stores: every decision recorded durably before its reply;
  `gateway.audit_cli` reads it (``cobrand audit``).
- `gateway.service`, `gateway.server`, `gateway.settings`, `gateway.cli`: the ScoringGateway gRPC
  service (``cobrand gateway serve``); `gateway.applicants` finds an applicant's join key by
  keyed pseudonym (`gateway.pseudonyms`); `gateway.partner_client` asks the partner for the
  embedding with a tight deadline and a circuit breaker.
- `gateway.bulk_scoring`, `gateway.targeting`, `gateway.target_cli`: campaign targeting of the
  whole aligned base through both sides (``cobrand target``).
"""

__all__: list[str] = []
