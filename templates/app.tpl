<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<title>{{name}}</title>
<link rel="stylesheet" href="/static/app/app.css">
<script src="https://telegram.org/js/telegram-web-app.js" defer></script>
<script type="module" src="/static/app/app.js"></script>
</head>
<body data-sandbox="{{'1' if sandbox else '0'}}">
<main id="app" aria-live="polite"><p class="muted">Loading {{name}}…</p></main>
</body>
</html>
