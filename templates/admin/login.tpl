<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · {{shop_name}} admin</title>
<link rel="stylesheet" href="/static/admin/admin.css">
</head>
<body class="login">
<main>
  <h1>{{shop_name}}</h1>
  <form method="post" action="/admin/login" class="card">
    <input type="hidden" name="next" value="{{next}}">
    <label>Admin password <input type="password" name="password" autocomplete="current-password" required autofocus></label>
    % if error:
    <p class="flash bad" role="alert">{{error}}</p>
    % end
    <button type="submit">Log in</button>
  </form>
</main>
</body>
</html>
