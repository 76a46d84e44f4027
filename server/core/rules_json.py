"""The stored form of a resource's security rules: one JSON list per rule, shared by every metadata
backend (SQLite, PostgreSQL) so that a row means the same wherever it is kept.

Each rule is `[priority, direction, action, protocol, peer_cidr, port_from, port_to, id, kind]`
(enums as their numbers). Rows written before rules had ids and kinds hold the first 7 items:
those rules are security-group rules and get their ids as at registration (complete_rule_ids:
the same ids on every load).
"""

from __future__ import annotations

import json

from server.core.model import Action, Direction, RuleKind, SecurityRule
from server.core.security import complete_rule_ids


def rules_to_json(rules: tuple[SecurityRule, ...]) -> str:
    return json.dumps(
        [
            [
                r.priority,
                int(r.direction),
                int(r.action),
                r.protocol,
                r.peer_cidr,
                r.port_from,
                r.port_to,
                r.id,
                int(r.kind),
            ]
            for r in rules
        ]
    )


def rules_from_json(text: str) -> tuple[SecurityRule, ...]:
    rules = []
    for item in json.loads(text):
        p, d, a, proto, cidr, pf, pt = item[:7]
        rid, kind = (item[7], RuleKind(item[8])) if len(item) >= 9 else ("", RuleKind.SECURITY_GROUP)
        rules.append(SecurityRule(p, Direction(d), Action(a), proto, cidr, pf, pt, rid, kind))
    return complete_rule_ids(rules)
