"""``manage.py add_user NAME --role admin|annotator [--password P]``."""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from seke_app.roles import ROLES, user_create


class Command(BaseCommand):
    help = "Create a user in one of SEKE's roles (admin or annotator)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=sorted(ROLES), required=True)
        parser.add_argument(
            "--password",
            help="default: $SEKE_NEW_PASSWORD, or asked for on the terminal",
        )
        parser.add_argument("--email", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        password = options["password"] or os.environ.get("SEKE_NEW_PASSWORD")
        if not password:
            password = getpass.getpass(f"Password for {options['username']}: ")
        try:
            user = user_create(
                username=options["username"],
                password=password,
                role=options["role"],
                email=options["email"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"created {options['role']} {user.username}"))
