"""mask_secrets: every form a password takes in a URL or a message is masked, nothing else is; the
settings that carry URLs never show one; the Redis CA setting joins the URL."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.engine import make_url

from common.errors import ConfigurationError
from common.masking import mask_secrets
from common.settings import ConsumerSettings, ProducerSettings, redis_url_with_ca, validate_redis_url
from consumer.logs import JsonFormatter, MaskingFormatter


@pytest.mark.parametrize("text, masked", [
    ("redis://app:s3cret@127.0.0.1:6379/0", "redis://app:***@127.0.0.1:6379/0"),
    ("rediss://:s3cret@host:6380/0?ssl_ca_certs=/etc/ca.pem", "rediss://:***@host:6380/0?ssl_ca_certs=/etc/ca.pem"),
    ("unix://:s3cret@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
    ("redis://app:Pw%40x%2Fy@h/0", "redis://app:***@h/0"),  # URL-escaped
    ("redis://app:p@ss@h/0", "redis://app:***@h/0"),  # a raw "@": up to the last one, as parsers read it
    ("postgresql+psycopg://pg:s3cret@db:5432/sim?options=-csearch_path%3Dx",
     "postgresql+psycopg://pg:***@db:5432/sim?options=-csearch_path%3Dx"),
    ("redis://app@h/0?db=1&password=s3cret&x=1", "redis://app@h/0?db=1&password=***&x=1"),
    ("host=db user=pg password=s3cret dbname=sim", "host=db user=pg password=*** dbname=sim"),
    ("rediss://h/0?ssl_password=s3cret", "rediss://h/0?ssl_password=***"),
    ("error: cannot reach 'redis://a:s3cret@h/0': refused", "error: cannot reach 'redis://a:***@h/0': refused"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # no password: unchanged
    ("redis://app@h:6379/0", "redis://app@h:6379/0"),
    ("sqlite:////data/runs/{simulation_id}.db", "sqlite:////data/runs/{simulation_id}.db"),
    ("password authentication failed for user \"pg\"", "password authentication failed for user \"pg\""),
])
def test_mask_secrets_masks_passwords_and_keeps_the_rest(text, masked):
    assert mask_secrets(text) == masked
    assert mask_secrets(masked) == masked  # idempotent


def test_mask_secrets_takes_any_object_and_several_urls():
    url = make_url("postgresql+psycopg://pg@db/sim").set(password="s3cret")
    assert "s3cret" not in mask_secrets(url.render_as_string(hide_password=False))
    both = mask_secrets("from redis://a:one1@h/0 to postgresql://b:two2@db/x")
    assert "one1" not in both and "two2" not in both and both.count("***") == 2
    assert mask_secrets(None) == "None"


def test_settings_never_show_a_password():
    consumer = ConsumerSettings(redis_url="redis://app:s3cret@h/0", db_url="postgresql+psycopg://pg:s3cret@db/x")
    producer = ProducerSettings(redis_url="redis://app@h/0?password=s3cret")
    for shown in (repr(consumer), str(consumer), repr(producer), str(producer)):
        assert "s3cret" not in shown and "***" in shown
    assert consumer.redis_url == "redis://app:s3cret@h/0"  # the value itself is untouched


def test_both_log_formats_mask_passwords():
    record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "connect url=%s", ("redis://a:s3cret@h/0",), None)
    for formatter in (JsonFormatter(), MaskingFormatter("%(levelname)s %(message)s")):
        line = formatter.format(record)
        assert "s3cret" not in line and "redis://a:***@h/0" in line


def test_configuration_errors_mask_the_url():
    with pytest.raises(ConfigurationError) as bad_scheme:
        ConsumerSettings(redis_url="http://app:s3cret@h/0")
    with pytest.raises(ConfigurationError) as bad_backend:
        ConsumerSettings(db_url="oracle://scott:s3cret@db/x")
    for error in (bad_scheme, bad_backend):
        assert "s3cret" not in str(error.value) and "***" in str(error.value)


def test_the_redis_ca_setting_joins_a_rediss_url(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert redis_url_with_ca("rediss://a:p@h:6380/0", str(ca)) == f"rediss://a:p@h:6380/0?ssl_ca_certs={ca}"
    assert redis_url_with_ca("rediss://h/0?db=1", str(ca)) == f"rediss://h/0?db=1&ssl_ca_certs={ca}"
    assert redis_url_with_ca("rediss://h/0?ssl_ca_certs=/other.pem", str(ca)) == "rediss://h/0?ssl_ca_certs=/other.pem"
    assert redis_url_with_ca("redis://h/0", None) == "redis://h/0"
    settings = ConsumerSettings(redis_url="rediss://h/0", redis_ca_certs=str(ca))
    assert settings.redis_url.endswith(f"?ssl_ca_certs={ca}")


def test_a_redis_ca_that_cannot_work_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="needs a rediss:// URL"):
        redis_url_with_ca("redis://a:s3cret@h/0", str(tmp_path))
    with pytest.raises(ConfigurationError, match="not a readable file"):
        redis_url_with_ca("rediss://h/0", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="not a readable file") as in_url:
        validate_redis_url(f"rediss://a:s3cret@h/0?ssl_ca_certs={tmp_path / 'missing.pem'}")
    assert "s3cret" not in str(in_url.value)
