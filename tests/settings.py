"""The tests' settings: SEKE's own, with a fast password hash.

Django's default hash (PBKDF2 with a million iterations) costs about half a CPU
second per password set or checked, and the suite creates and logs in users by
the hundred. Tests do not test the hash's strength, so they use Django's MD5
hasher, as Django's documentation advises for test runs. The processes the tests
start (workers, gunicorn, commands) inherit ``DJANGO_SETTINGS_MODULE`` from the
test process, so they check those passwords with the same hasher. The default
hashers stay listed, to check a password hashed by a process on SEKE's own settings.
"""

from django.conf import global_settings

from seke_app.settings import *  # noqa: F403

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    *global_settings.PASSWORD_HASHERS,
]
