"""slixmpp-omemo set up for tests: key material in memory, blind trust.
Shared by omemo.py (one-to-one) and muc.py (a private group)."""

from typing import Dict, FrozenSet, Optional

from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
from slixmpp.plugins import register_plugin
from slixmpp_omemo import TrustLevel, XEP_0384


class MemoryStorage(Storage):
    """OMEMO key material for one test run: kept in memory only."""

    def __init__(self) -> None:
        super().__init__()
        self._data: Dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        return Just(self._data[key]) if key in self._data else Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self._data[key] = value

    async def _delete(self, key: str) -> None:
        self._data.pop(key, None)


class XEP_0384Impl(XEP_0384):  # pylint: disable=invalid-name
    """slixmpp-omemo with in-memory storage and blind trust (a test has no user to ask)."""

    default_config = {"fallback_message": "This message is OMEMO encrypted."}

    def plugin_init(self) -> None:
        self._mem_storage = MemoryStorage()
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._mem_storage

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(
        self, blindly_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        pass

    async def _prompt_manual_trust(
        self, manually_trusted: FrozenSet[DeviceInformation], identifier: Optional[str]
    ) -> None:
        sm = await self.get_session_manager()
        for d in manually_trusted:
            await sm.set_trust(d.bare_jid, d.identity_key, TrustLevel.TRUSTED.value)


register_plugin(XEP_0384Impl)
