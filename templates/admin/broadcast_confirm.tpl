% rebase('admin/base.tpl', title='Send this broadcast?', section='/admin/broadcast')
<h1>Send this broadcast?</h1>
% if changed:
<p class="flash bad" role="alert">⚠️ The number of shoppers it reaches changed since you looked. Nothing was sent: check it again.</p>
% end
<section class="card tg-confirm">
  % n = audience["recipients"]
  <p class="audience"><b>{{audience_words}}</b></p>
  % if not n:
  <p>So there is no Send button. You can still send a test to your own chat from the form (Change the message).</p>
  % end
  <p class="muted">As Telegram shows it ({{length}} characters):</p>
  % if photo:
  <img src="/media/{{photo}}" alt="The photo sent with the message" class="thumb">
  % end
  <div class="bubble tg">{{!preview}}</div>
  <form method="post" action="/admin/broadcast" class="tg-buttons">
    % include('admin/_csrf.tpl')
    <input type="hidden" name="text" value="{{text}}">
    % if photo:
    <input type="hidden" name="photo_ref" value="{{photo}}">
    % end
    % if n:
    <input type="hidden" name="recipients" value="{{n}}">
    <button type="submit">Send to {{n}} shopper{{'s' if n != 1 else ''}}</button>
    % end
    <button type="submit" name="action" value="edit" class="secondary">Change the message</button>
  </form>
</section>
