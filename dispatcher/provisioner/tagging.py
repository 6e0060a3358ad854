"""Per-provider tag (label, metadata) rules, so the ``pd-*`` tags survive every cloud.

Providers differ: EC2 takes any character (keys up to 128, values up to 256);
Google Compute Engine labels take only lowercase letters, digits, ``_`` and
``-``, at most 63 of them, keys starting with a letter; OpenStack metadata is
limited to 255. :class:`TagRules` turns the provisioner's tags into ones a
provider accepts (:meth:`~TagRules.encode`) and back (:meth:`~TagRules.decode`):

* characters a provider refuses (uppercase, ``.``, ``_`` itself) become
  ``_`` + two hex digits of each UTF-8 byte (``Engine.A`` → ``_45ngine_2e_41``),
  which decodes exactly;
* an extra tag key (``tags`` of the site) must fit as it is, and begin with a
  lowercase letter where the provider wants one: the driver refuses others with a
  :class:`~pdcommon.errors.ConfigError`;
* a value still too long is cut and ends with ``_z`` + 10 hex digits of its hash:
  it stays unique and comparable (the owner tag is compared in its encoded form)
  but does not decode (:meth:`~TagRules.decode` leaves it out).

:func:`rules_for` picks the rules of a Libcloud provider name; unknown providers
get :data:`PERMISSIVE` (255 characters, any character).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["GCE", "PERMISSIVE", "RULES", "TagRules", "rules_for"]

_ESCAPE = re.compile(r"_([0-9a-f]{2})")
_HASH = "_z"


@dataclass(frozen=True)
class TagRules:
    """What one provider accepts in tag keys and values.

    Attributes:
        name: for messages.
        key_limit: the longest key.
        value_limit: the longest value.
        allowed: the characters taken as they are (``None``: every character);
            ``_`` must not be one of them when others are escaped.
        name_limit: the longest node name.
        key_starts_with_letter: keys must begin with a lowercase letter (an
            extra tag whose key does not is refused: :meth:`check_key`).
    """

    name: str
    key_limit: int = 255
    value_limit: int = 255
    allowed: str | None = None
    name_limit: int = 255
    key_starts_with_letter: bool = False

    def check_key(self, key: str) -> str | None:
        """Why the tag key ``key`` cannot be used on this provider (``None``: it can)."""
        encoded = self.encode_text(key, self.key_limit)
        if self.decode_text(encoded) != key:
            return f"longer than {self.key_limit} characters"
        if self.key_starts_with_letter and not ("a" <= encoded[:1] <= "z"):
            return "it must begin with a lowercase letter"
        return None

    def encode(self, tags: dict[str, str]) -> dict[str, str]:
        """The tags as this provider accepts them."""
        return {
            self.encode_text(key, self.key_limit): self.encode_text(value, self.value_limit)
            for key, value in tags.items()
        }

    def decode(self, tags: dict[str, str]) -> dict[str, str]:
        """Tags read from a node, as the provisioner wrote them (shortened ones left out)."""
        decoded = {}
        for key, value in tags.items():
            plain_key, plain_value = self.decode_text(key), self.decode_text(value)
            if plain_key is not None and plain_value is not None:
                decoded[plain_key] = plain_value
        return decoded

    def encode_text(self, text: str, limit: int) -> str:
        """``text`` escaped and, if needed, shortened to ``limit`` (module docstring)."""
        if self.allowed is not None:
            text = "".join(self._escape(char) for char in text)
        if len(text) <= limit:
            return text
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        head = text[: max(0, limit - len(_HASH) - len(digest))]
        # never leave half an escape at the cut
        cut = head.rfind("_")
        if self.allowed is not None and cut >= len(head) - 2 and cut >= 0:
            head = head[:cut]
        return f"{head}{_HASH}{digest}"

    def decode_text(self, text: str) -> str | None:
        """The text :meth:`encode_text` was given, or ``None`` if it was shortened."""
        if self.allowed is None:
            return text
        if _HASH in text:  # "_" + a hex digit follows every escaped character
            return None
        raw = bytearray()
        index = 0
        while index < len(text):
            match = _ESCAPE.match(text, index)
            if match is not None:
                raw.append(int(match.group(1), 16))
                index = match.end()
            else:
                raw += text[index].encode("utf-8")
                index += 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def node_name(self, node_id: str) -> str:
        """A node name the provider accepts, made from the node id."""
        if self.allowed is None:
            return node_id[: self.name_limit]
        name = re.sub(r"[^a-z0-9-]+", "-", node_id.lower()).strip("-") or "pd-node"
        if not name[0].isalpha():
            name = f"pd-{name}"
        return name[: self.name_limit].rstrip("-")

    def _escape(self, char: str) -> str:
        assert self.allowed is not None
        if char in self.allowed:
            return char
        return "".join(f"_{byte:02x}" for byte in char.encode("utf-8"))


#: Google Compute Engine labels (and node names): lowercase, 63 characters.
GCE = TagRules(
    "gce",
    key_limit=63,
    value_limit=63,
    allowed="abcdefghijklmnopqrstuvwxyz0123456789-",
    name_limit=63,
    key_starts_with_letter=True,
)
#: Providers with no rule of their own.
PERMISSIVE = TagRules("permissive")
#: Rules by Libcloud provider name.
RULES: dict[str, TagRules] = {
    "ec2": TagRules("ec2", key_limit=128, value_limit=256),
    "gce": GCE,
    "openstack": TagRules("openstack", key_limit=255, value_limit=255),
    "azure_arm": TagRules("azure_arm", key_limit=512, value_limit=256),
}


def rules_for(provider: str) -> TagRules:
    """The tag rules of a Libcloud provider (:data:`PERMISSIVE` when it has none)."""
    return RULES.get(provider.lower(), PERMISSIVE)
