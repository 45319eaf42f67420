# PORT is given by the orchestrator; bind loopback only (host networking by default).
echo "$APP_REVISION" > /www/version
exec /bin/busybox httpd -f -p "127.0.0.1:${PORT:-8080}" -h /www
