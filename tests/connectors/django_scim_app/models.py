"""The application's users and groups, with the SCIM fields ``django-scim2`` keeps."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django_scim.models import AbstractSCIMGroupMixin, AbstractSCIMUserMixin


class Group(AbstractSCIMGroupMixin):
    name = models.CharField(max_length=200, unique=True)

    class Meta:
        app_label = "django_scim_app"


class User(AbstractSCIMUserMixin, AbstractUser):
    scim_groups = models.ManyToManyField(Group, related_name="user_set", blank=True)

    class Meta:
        app_label = "django_scim_app"
