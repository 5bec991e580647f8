"""The HTTP front end (FastAPI). It never imports torch: it checks uploads with Pillow, stores
them in Redis and sends the job to the workers by task name."""
