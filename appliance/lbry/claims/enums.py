"""The code lists behind LBRY's Language and Location enums, in LBRY's numbering (types repository,
v2/proto/claim.proto): ISO 639-1 languages, ISO 15924 scripts, ISO 3166-1 countries, then UN M.49 regions."""
from __future__ import annotations

from appliance.lbry.claims.schema import Enum

# ISO 639-1, numbered from 1: "en" first, then the rest alphabetically (LBRY's order).
_LANGUAGES = """en aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da
de dv dz ee el eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io
is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt
my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn
so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh
zu""".split()

# ISO 15924, numbered from 1.
_SCRIPTS = """Adlm Afak Aghb Ahom Arab Aran Armi Armn Avst Bali Bamu Bass Batk Beng Bhks Blis Bopo Brah Brai Bugi
Buhd Cakm Cans Cari Cham Cher Cirt Copt Cpmn Cprt Cyrl Cyrs Deva Dogr Dsrt Dupl Egyd Egyh Egyp Elba Elym Ethi Geok
Geor Glag Gong Gonm Goth Gran Grek Gujr Guru Hanb Hang Hani Hano Hans Hant Hatr Hebr Hira Hluw Hmng Hmnp Hrkt Hung
Inds Ital Jamo Java Jpan Jurc Kali Kana Khar Khmr Khoj Kitl Kits Knda Kore Kpel Kthi Lana Laoo Latf Latg Latn Leke
Lepc Limb Lina Linb Lisu Loma Lyci Lydi Mahj Maka Mand Mani Marc Maya Medf Mend Merc Mero Mlym Modi Mong Moon Mroo
Mtei Mult Mymr Nand Narb Nbat Newa Nkdb Nkgb Nkoo Nshu Ogam Olck Orkh Orya Osge Osma Palm Pauc Perm Phag Phli Phlp
Phlv Phnx Plrd Piqd Prti Qaaa Qabx Rjng Rohg Roro Runr Samr Sara Sarb Saur Sgnw Shaw Shrd Shui Sidd Sind Sinh Sogd
Sogo Sora Soyo Sund Sylo Syrc Syre Syrj Syrn Tagb Takr Tale Talu Taml Tang Tavt Telu Teng Tfng Tglg Thaa Thai Tibt
Tirh Ugar Vaii Visp Wara Wcho Wole Xpeo Xsux Yiii Zanb Zinh Zmth Zsye Zsym Zxxx Zyyy Zzzz""".split()

# ISO 3166-1 alpha-2, numbered from 1 in the order of the countries' English names.
_COUNTRIES = """AF AX AL DZ AS AD AO AI AQ AG AR AM AW AU AT AZ BS BH BD BB BY BE BZ BJ BM BT BO BQ BA BW BV BR IO
BN BG BF BI KH CM CA CV KY CF TD CL CN CX CC CO KM CG CD CK CR CI HR CU CW CY CZ DK DJ DM DO EC EG SV GQ ER EE ET FK
FO FJ FI FR GF PF TF GA GM GE DE GH GI GR GL GD GP GU GT GG GN GW GY HT HM VA HN HK HU IS IN ID IR IQ IE IM IL IT JM
JP JE JO KZ KE KI KP KR KW KG LA LV LB LS LR LY LI LT LU MO MK MG MW MY MV ML MT MH MQ MR MU YT MX FM MD MC MN ME MS
MA MZ MM NA NR NP NL NC NZ NI NE NG NU NF MP NO OM PK PW PS PA PG PY PE PH PN PL PT PR QA RE RO RU RW BL SH KN LC MF
PM VC WS SM ST SA SN RS SC SL SG SX SK SI SB SO ZA GS SS ES LK SD SR SJ SZ SE CH SY TW TJ TZ TH TL TG TK TO TT TN TR
TM TC TV UG UA AE GB US UM UY UZ VU VE VN VG VI WF EH YE ZM ZW""".split()

# UN M.49 geographic regions, numbered on after the countries; the enum names are "R" + the M.49 code.
_REGIONS = """001 002 015 012 818 434 504 729 788 732 202 014 086 108 174 262 232 231 260 404 450 454 480 175 508 638
646 690 706 728 800 834 894 716 017 024 120 140 148 178 180 226 266 678 018 072 748 426 516 710 011 204 854 132 384
270 288 324 624 430 466 478 562 566 654 686 694 768 019 419 029 660 028 533 044 052 535 092 136 192 531 212 214 308
312 332 388 474 500 630 652 659 662 663 670 534 780 796 850 013 084 188 222 320 340 484 558 591 005 032 068 074 076
152 170 218 238 254 328 600 604 239 740 858 862 021 060 124 304 666 840 010 142 143 398 417 762 795 860 030 156 344
446 408 392 496 410 035 096 116 360 418 458 104 608 702 764 626 704 034 004 050 064 356 364 462 524 586 144 145 051
031 048 196 268 368 376 400 414 422 512 634 682 275 760 792 784 887 150 151 112 100 203 348 616 498 642 643 703 804
154 248 830 831 832 680 208 233 234 246 352 372 833 428 440 578 744 752 826 039 008 020 070 191 292 300 336 380 470
499 807 620 674 688 705 724 155 040 056 250 276 438 442 492 528 756 009 053 036 162 166 334 554 574 054 242 540 598
090 548 057 316 296 584 583 520 580 585 581 061 016 184 258 570 612 882 772 776 798 876""".split()

LANGUAGE = Enum.from_list("Language.Language", ["UNKNOWN_LANGUAGE", *_LANGUAGES])
SCRIPT = Enum.from_list("Language.Script", ["UNKNOWN_SCRIPT", *_SCRIPTS])
COUNTRY = Enum.from_list("Location.Country", ["UNKNOWN_COUNTRY", *_COUNTRIES, *("R" + r for r in _REGIONS)])
