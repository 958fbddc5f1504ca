from __future__ import annotations

from django.contrib import admin
from django.urls import path

from calls import live_page, setup_page, views, web_phone

admin.site.site_header = "Voice agent"
admin.site.site_title = "Voice agent"
admin.site.index_title = "Calls and agents"

urlpatterns = [
    # Staff only (admin_view: anyone else goes to the admin login, next=/).
    path("", admin.site.admin_view(setup_page.setup_page), name="setup"),
    path("incoming-call", views.incoming_call, name="incoming-call"),
    path("call-status", views.call_status, name="call-status"),
    path("stream-status", views.stream_status, name="stream-status"),
    path("amd-status", views.amd_status, name="amd-status"),
    path("stream-ended", views.stream_ended, name="stream-ended"),
    path("healthz", views.health, name="health"),
    # Staff only (admin_view: login redirect); its socket is /ws/live (calls/routing.py).
    path("admin/live/", admin.site.admin_view(live_page.live_calls), name="live-calls"),
    # Staff only; its socket is /ws/phone (calls/routing.py).
    path("admin/phone/", admin.site.admin_view(web_phone.phone_page), name="web-phone"),
    path("admin/", admin.site.urls),
]
