from django.urls import path

from review import views

app_name = "review"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("start", views.start, name="start"),
    path("undo", views.undo, name="undo"),
    path("task/<uuid:code>/", views.task_page, name="task"),
    path("task/<uuid:code>/decide", views.decide, name="decide"),
    path("task/<uuid:code>/skip", views.skip, name="skip"),
]
