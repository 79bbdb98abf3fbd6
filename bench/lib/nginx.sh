# Shared by the front door benchmarks (source it): wrk and nginx, and nginx as a reverse proxy
# with upstream keep-alive, as it is usually deployed, with the X-Forwarded-* headers Lifeboat's
# front door sets.

# Installs wrk and nginx with apt-get when either is missing; sets NGINX to nginx's path.
ensure_wrk_and_nginx() {
    if ! command -v wrk >/dev/null || { ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; }; then
        local sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk nginx >/dev/null
    fi
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
}

# start_nginx DIR PORT UPSTREAM...: writes DIR/nginx.conf and starts nginx in the foreground of
# a background job on 127.0.0.1:PORT, balancing over the UPSTREAM addresses (host:port). Sets
# NGINX_PID (the master; its workers are its children) and adds it to PIDS.
start_nginx() {
    local dir="$1" port="$2" upstream servers=""
    shift 2
    for upstream in "$@"; do servers+="        server $upstream;"$'\n'; done
    mkdir -p "$dir/logs"
    {
        [ "$(id -u)" -eq 0 ] && echo "user root;"
        cat <<NGINX
worker_processes auto;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream guestbook {
${servers}        keepalive 128;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://guestbook;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
NGINX
    } >"$dir/nginx.conf"
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g "daemon off;" >"$dir/nginx.log" 2>&1 &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}
