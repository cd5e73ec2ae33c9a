% rebase('admin/base.tpl', title='Orders', section='/admin/orders')
<h1>Orders</h1>
<form class="filters" method="get" action="/admin/orders" hx-get="/admin/orders" hx-target="#orders" hx-trigger="change, submit" hx-push-url="true">
  <label>Status <select name="status">
    <option value="">any</option>
    % for s in statuses:
    <option value="{{s}}" {{'selected' if filters['status'] == s else ''}}>{{s}}</option>
    % end
  </select></label>
  <label>Paid with <select name="method">
    <option value="">any way</option>
    % for m, words in method_words.items():
    <option value="{{m}}" {{'selected' if filters['method'] == m else ''}}>{{words}}</option>
    % end
  </select></label>
  <label>From <input type="date" name="from" value="{{filters['from']}}"></label>
  <label>To <input type="date" name="to" value="{{filters['to']}}"></label>
  <label>Order #, user id or @username <input name="q" value="{{filters['q']}}" type="search"></label>
  <button type="submit">Filter</button>
</form>
<div id="orders">
% include('admin/_orders.tpl')
</div>
