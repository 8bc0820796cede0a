"""``[database]``: the shared books' PostgreSQL, and every mistake in it named."""

from __future__ import annotations

import pytest

from hoosh_edge.config import ConfigError, parse_config

URL = "postgresql://hoosh@127.0.0.1:5432/books"


def test_no_database_table_keeps_the_books_in_sqlite() -> None:
    assert parse_config({}, env={}).database.url is None


def test_a_url_and_a_password_from_the_environment() -> None:
    raw = {"database": {"url": URL, "password": "$HOOSH_DB_PASSWORD", "lease_s": 20}}
    db = parse_config(raw, env={"HOOSH_DB_PASSWORD": "s3cret"}).database
    assert (db.url, db.password, db.lease_s, db.connect_timeout_s) == (URL, "s3cret", 20.0, 3.0)


@pytest.mark.parametrize(
    ("table", "env", "says"),
    [
        ({"url": "mysql://x@127.0.0.1/db"}, {}, "'database.url' must look like postgresql://"),
        ({"url": "postgresql:///db"}, {}, "'database.url' must look like postgresql://"),
        ({"url": "postgresql://u:pw@127.0.0.1/db"}, {}, "'database.url' holds a password"),
        ({"url": URL, "password": "plain"}, {}, "must name an environment variable"),
        ({"url": URL, "password": "$NOPE"}, {}, "refers to $NOPE, which is not set"),
        ({"url": URL, "lease_s": 1}, {}, "'database.lease_s' must be between 5 and 3600"),
        ({"url": URL, "host": "x"}, {}, "unknown key 'database.host'"),
        ({"lease_s": 10}, {}, "'[database]' needs 'url'"),
        ({"url": 5}, {}, "'database.url' must be str"),
    ],
)
def test_each_mistake_is_named(table: dict, env: dict, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"database": table}, src="edge.toml", env=env)
    assert str(caught.value).startswith("edge.toml: ") and says in str(caught.value)
    assert "pw@" not in str(caught.value)  # a password never reaches a message
