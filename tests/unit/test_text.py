"""What people read: WeCom's byte limits, yuan, masking (bot.text)."""

import pytest

from bot.text import app_text, fit_lines, mask_name, mask_phone, yuan


def test_app_text_and_fit_lines_respect_wecoms_byte_limit():
    assert len(app_text("u", "名" * 3000)["content"]["content"].encode()) <= 2048
    msg = fit_lines("头", [f"{i}. 王** 尾号1234 ×2 深圳科技园店福利1群" for i in range(200)], "完整表格：http://x/y.csv")
    assert len(msg.encode()) <= 2048 and msg.endswith("完整表格：http://x/y.csv") and "……还有" in msg


@pytest.mark.parametrize("cents, text", [(3990, "39.9"), (4000, "40"), (5, "0.05"), (0, "0")])
def test_yuan(cents, text):
    assert yuan(cents) == text


@pytest.mark.parametrize("name, masked", [("王阿姨", "王**"), ("李", "李*"), ("", "*"), ("欧阳小明", "欧**")])
def test_names_are_masked_where_the_group_reads_them(name, masked):
    assert mask_name(name) == masked


def test_phone_tails_show_their_last_two_digits():
    assert mask_phone("1234") == "**34"
