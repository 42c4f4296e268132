"""Whether coded anatomy (Anatomic Region Sequence, (0008,2218)) is a paired body part.

Laterality (0020,0060) is Type 2C: required, with a value, for a paired body part, and
absent otherwise. dciodvfy decides "paired" from BodyPartExamined (see
:data:`node.ingest.modules.UNPAIRED_BODY_PARTS`) and from the code of the Anatomic Region
Sequence item: the codes below are the ones it treats as unpaired (measured with dicom3tools'
``dciodvfy``: a VL Photographic object with the code and no laterality passes; with any other
code, e.g. SCT 85562004 hand or 80248007 breast, it reports the missing Laterality as an
error). SNOMED CT codes count with the scheme ``SCT`` and the retired SNOMED-RT codes with
``SRT`` only (measured: 51185008 chest with ``SRT`` or ``DCM`` needs a laterality). dciodvfy
also requires a single item (more are an error outside the DX family).
"""

from __future__ import annotations

import logging
from typing import Any

from node.errors import ConversionError

log = logging.getLogger(__name__)

UNPAIRED_SCT = frozenset(
    {
        "774007",
        "2748008",
        "4596009",
        "7832008",
        "9875009",
        "10200004",
        "11279006",
        "12738006",
        "12921003",
        "13648007",
        "14742008",
        "15776009",
        "15825003",
        "18911002",
        "21306003",
        "21974007",
        "22083002",
        "26493002",
        "28231008",
        "28273000",
        "30315005",
        "32672002",
        "32849002",
        "34402009",
        "34411009",
        "34516001",
        "35039007",
        "35819009",
        "38266002",
        "38848004",
        "38864007",
        "39607008",
        "41216001",
        "41695006",
        "42575006",
        "43799004",
        "44567001",
        "45048000",
        "45206002",
        "45292006",
        "50536004",
        "51185008",
        "54066008",
        "54247002",
        "54735007",
        "56873002",
        "57034009",
        "60184004",
        "61660003",
        "64688005",
        "69536005",
        "69695003",
        "69748006",
        "69930009",
        "71252005",
        "71854001",
        "72410000",
        "76784001",
        "77568009",
        "78961009",
        "80891009",
        "82849001",
        "89546000",
        "89837001",
        "90290004",
        "110612005",
        "110621006",
        "110639002",
        "110726009",
        "110837003",
        "110861005",
        "113192009",
        "113262008",
        "113345001",
        "122494005",
        "122495006",
        "122496007",
        "128564006",
        "128565007",
        "181211006",
        "181422007",
        "280717001",
        "284639000",
        "297171002",
        "297172009",
        "297173004",
        "312535008",
        "360524005",
        "360955006",
        "362047009",
        "416152001",
        "416319003",
        "416550000",
        "416631005",
        "416775004",
        "416949008",
        "417437006",
        "421060004",
        "816092008",
        "818981001",
        "818982008",
    }
)
UNPAIRED_SRT = frozenset(
    {
        "R-FAB52",
        "R-FAB53",
        "R-FAB54",
        "R-FAB55",
        "R-FAB56",
        "R-FAB57",
        "R-FAB58",
        "T-11000",
        "T-11100",
        "T-11210",
        "T-11218",
        "T-11501",
        "T-11502",
        "T-11503",
        "T-11AD0",
        "T-11BF0",
        "T-20101",
        "T-21000",
        "T-2300C",
        "T-24100",
        "T-25000",
        "T-28000",
        "T-32000",
        "T-32502",
        "T-32602",
        "T-41070",
        "T-42000",
        "T-42070",
        "T-42100",
        "T-42300",
        "T-42400",
        "T-42500",
        "T-45520",
        "T-45526",
        "T-46460",
        "T-48817",
        "T-48832",
        "T-48890",
        "T-53000",
        "T-55000",
        "T-55002",
        "T-56000",
        "T-57000",
        "T-58000",
        "T-58200",
        "T-58400",
        "T-58600",
        "T-59000",
        "T-59300",
        "T-59470",
        "T-59490",
        "T-59600",
        "T-60610",
        "T-62000",
        "T-63000",
        "T-65000",
        "T-65010",
        "T-65600",
        "T-74000",
        "T-75000",
        "T-81000",
        "T-82000",
        "T-83000",
        "T-83200",
        "T-88920",
        "T-91000",
        "T-92000",
        "T-9200B",
        "T-A0100",
        "T-A7010",
        "T-B6000",
        "T-C3000",
        "T-C8000",
        "T-D0010",
        "T-D00F7",
        "T-D00F8",
        "T-D00F9",
        "T-D0146",
        "T-D04FF",
        "T-D1000",
        "T-D1100",
        "T-D1160",
        "T-D1460",
        "T-D1600",
        "T-D2100",
        "T-D2700",
        "T-D3000",
        "T-D3200",
        "T-D3300",
        "T-D4000",
        "T-D4230",
        "T-D4900",
        "T-D6000",
        "T-D6500",
        "T-DD006",
        "T-DD123",
        "T-DD163",
        "T-F1810",
    }
)


def coded_region(value: Any) -> tuple[str, str] | None:
    """``(CodingSchemeDesignator, CodeValue)`` of the Anatomic Region Sequence's item."""
    if not value:
        return None
    item = value[0]
    return (str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeValue", "")))


def is_unpaired(region: tuple[str, str]) -> bool:
    """True for the codes dciodvfy treats as unpaired anatomy (absent Laterality)."""
    scheme, code = region
    return (scheme == "SCT" and code in UNPAIRED_SCT) or (scheme == "SRT" and code in UNPAIRED_SRT)


def check_single_item(value: Any, name: str) -> None:
    """Refuse an Anatomic Region Sequence of more than one item (dciodvfy: an error)."""
    if value and len(value) > 1:
        raise ConversionError(
            f"{name}: (0008,2218) AnatomicRegionSequence has {len(value)} items where one is "
            "allowed (dciodvfy: one item outside the DX family): keep the main region and "
            "name the others in a description, e.g. (0008,103E) SeriesDescription"
        )
